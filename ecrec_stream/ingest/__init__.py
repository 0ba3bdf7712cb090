"""Ingestion: strict validation into dead letters, byte-bounded batch messages, isolation of
the records a stage raises on, event-time watermarks and merge, and data-quality helpers
(dedupe windows, bot rules' inputs, pseudonyms)."""
