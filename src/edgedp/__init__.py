"""edgedp: differentially private IoT intrusion detection for edge gateways."""

__version__ = "0.1.0"
