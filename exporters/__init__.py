"""Writers from an Avatar to engine file formats (bytes in memory; no file I/O here)."""
