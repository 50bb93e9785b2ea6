"""Checks of deploy/ that run without a Docker engine or a Kubernetes cluster; the entry point
is scripts/check-deploy.sh, which also says what each check covers."""
