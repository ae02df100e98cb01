"""fl_app."""
