"""The separation worker: the daemon (``worker.worker``) and the code only it runs."""
