"""Fingerprints as a library: records, images, extraction, quality gates, templates, 1:1 and 1:N.

- :mod:`.records`: ISO/IEC 19794-2:2005 and ANSI INCITS 378-2004 finger-minutiae records, read and written.
- :mod:`.images`: PNG, TIFF, BMP or raw 8-bit impressions.
- :mod:`.extraction`: NIST MINDTCT minutiae and NFIQ 2 (``nbis-py``).
- :mod:`.capture`: one capture, its quality and gates, and its template.
- :mod:`.templates`: versioned template bytes carrying the extractor+matcher fingerprint.
- :mod:`.mcc`, :mod:`.similarity`: Minutia Cylinder-Code descriptors and the LSS-R global score.
- :mod:`.matcher`: ``compare``, thresholds; :mod:`.index`: 1:N search with a hashed first stage.
"""
