// Nothing to call: the target only supplies link-time symbols (see compat.c).
