"""The controller's store: the only package that speaks SQL."""
