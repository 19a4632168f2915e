"""The gateway runtime: runs a bundle's LiteRT models without the training stack.

Modules in this package import only numpy, ai_edge_litert, the standard
library and the pure edgedp modules (`edgedp.bundle`, `edgedp.atomic`,
`edgedp.features`, `edgedp.zeek`). They never import torch, polars or
pyarrow, so a Raspberry Pi class gateway installs only the base package.
"""
