"""Pure-tensor kernels (no nn.Module): naive references and fast forms."""
