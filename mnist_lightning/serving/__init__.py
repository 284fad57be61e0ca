"""Models in use outside training: :mod:`.serve` (``mnist-lightning serve``, a drawing page in the browser) and
:mod:`.export` (``mnist-lightning export``: ONNX, TorchScript and ``torch.export`` files).

Nothing is imported here: the command that needs a part imports it.
"""
