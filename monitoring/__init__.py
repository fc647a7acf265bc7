"""What happens after deployment: drift of the questions users ask against what the artifacts were built on."""
