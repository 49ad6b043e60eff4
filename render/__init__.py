"""Pure functions from a spec to Kubernetes documents and the litellm.yml snippet. Imports config only."""
