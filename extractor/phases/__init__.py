"""The three phases of a run (plan, columns, finalize) and the in-process chain of them.

Each phase is a function over (spec, store, source) that reads its inputs from the store and
writes its outputs there; none knows whether it runs in a Kubernetes Job or in this process.
"""
