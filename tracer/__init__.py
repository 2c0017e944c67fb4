"""tcp refusal tracer: which TCP peers this host silently refuses, from kernel tracepoints."""

__version__ = "0.1.0"
