"""Real torch modifiers for modfsm (pruning, quantization); found by name by the factory."""

__all__: list[str] = []
