"""Fast paths beside the reference core (``pcn.core``): the stacked no-grad inference loop
(``stacked``), the hand-written adjoint of ``bp`` (``adjoint``), the compiled loop
(``compiled``), fused kernels (``kernels``) and fast learning rules (``rules``).  Each is tested
equal to the reference and used only where it applies (``dispatch``, ``rules.rule``); speed
switches in ``options``."""
