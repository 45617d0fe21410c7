"""The mock harness: runs the Pulumi program under Pulumi mocks (no CLI, no cluster) and records what it
declares. It stands above the program: it imports infra/program.py, and nothing the program imports
imports it. Used by ``tff-k8s render`` (infra/render.py) and the tests."""
