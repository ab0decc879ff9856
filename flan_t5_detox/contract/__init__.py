"""The SageMaker side of the jobs, free of torch: the `/opt/ml` contract both ways (paths, the
readers, the one layout writer), job settings, failure conventions, metrics lines, S3 and
archives. The launcher imports only this layer on a laptop; a test imports it with torch made
unimportable.
"""
