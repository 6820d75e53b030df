"""Admin Router: the cluster's front door (nginx on every master, login and tokens)."""
