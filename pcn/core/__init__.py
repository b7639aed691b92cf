"""The science core: the model, its energy, PC inference and the learning rules, written
plainly (the reference implementation every fast path is tested against)."""
