"""The bridge's IO edge: connections, the reader, the serialising writer, reconnects."""
