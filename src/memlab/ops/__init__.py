"""Pure-tensor kernels (no nn.Module): naive references and fast forms."""

from memlab.ops.gated_delta import gated_delta_rule  # noqa: F401
