"""Pure logic shared by the controller, the CLI and the dashboard: standard library only."""
