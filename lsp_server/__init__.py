"""codefill language server."""
