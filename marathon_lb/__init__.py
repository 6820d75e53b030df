"""marathon-lb: HAProxy configured from Marathon's event bus (north–south), and the RPS autoscaler."""
