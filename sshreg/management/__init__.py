"""Management: garbage collection, retention, and the commands run over SSH exec."""
