"""Dashboard tests: Pilot against a real controller, SVG snapshots, a tmux smoke test."""
