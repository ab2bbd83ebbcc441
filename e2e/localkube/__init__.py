"""localkube: a real Kubernetes cluster on one machine for metatide's end-to-end tests.

The operator has to be tested against a real API server (CRD schema validation, the status
subresource, RBAC, the Job controller's Indexed-Job semantics) and its pods have to run from the
real image under a real container runtime (securityContext, read-only root, volumes, exit codes).
Registries are unreachable from the CI machine, so kind cannot run there: localkube builds the
components from the Go module proxy (``build``), the images from Debian's packages and the
repository's Dockerfile (``images``), starts etcd, kube-apiserver, kube-controller-manager and
kube-scheduler with generated certificates (``controlplane``), and one node: containerd and runc
from Debian with the real kubelet (``node``), on a bridge of its own (``network``, ``relay``).

Layers, top to bottom (nothing imports upwards):
    __main__      the ``e2e/cluster`` command line
    testkit       what tests hold: the cluster, kubectl, waits
    controlplane  up / down / status of the whole cluster
    node          containerd, kubelet, cgroups, the node's teardown
    images        the base, pause and metatide images (mmdebstrap, docker or podman)
    network       the node's bridge, addresses and CNI configuration
    relay         the relay process: node address -> host loopback
    build, pki    Go builds; certificates and kubeconfigs (openssl)
    api, procs    a stdlib HTTPS client for the API server; spawning and killing our processes
    settings      pinned versions and on-disk locations
"""
