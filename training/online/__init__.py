"""Online distillation (``other_methods.md`` §3): students, replay buffers and continual-learning regularisers."""
