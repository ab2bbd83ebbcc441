"""Foundations every layer shares: the spec and scope, record schemas, ids, the exception
tree, logs and progress reporting, the documents exchanged with the operator. Nothing here
imports another layer."""
