"""Multi-process training: ``distributed`` (torch.distributed wrappers, rank-0 work) and ``batchnorm``
(BatchNorm over the global batch).
"""
