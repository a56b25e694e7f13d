"""The memory-mapped trajectory store: TrajectoryWriter and TrajectoryReader."""
