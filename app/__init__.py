"""ctdesk's desktop viewer (PySide6 + VTK). Reaches models and files only through `engine`'s API."""
