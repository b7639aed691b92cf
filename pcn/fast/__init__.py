"""Fast paths beside the reference core: the stacked no-grad inference loop, the hand-written
adjoint of ``bp`` and the compiled loop.  Each is tested equal to ``pcn.core`` and used only
where it applies (``pcn.fast.dispatch``)."""
