"""Everything that talks to S3, one job a module: the client and its errors, the bucket's
layout and "newest", datasets, signed model artefacts, report files, and streaming.
"""
