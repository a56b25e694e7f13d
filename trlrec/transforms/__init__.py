"""TorchRL transforms that record: TensorDictRecorder, VideoRecorder, PixelRenderTransform."""
