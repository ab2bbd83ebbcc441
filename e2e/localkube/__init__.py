"""localkube: a real Kubernetes control plane on 127.0.0.1 for metatide's end-to-end tests.

The operator has to be tested against a real API server (CRD schema validation, the status
subresource, RBAC, the Job controller's Indexed-Job semantics), and the CI machine has no
container engine, so kind cannot run there. localkube builds the real components from the Go
module proxy (``build``), starts etcd, kube-apiserver and kube-controller-manager with generated
certificates (``controlplane``), and adds a small test kubelet (``kubelet``) that runs each pod's
containers as local processes.

Layers, top to bottom (nothing imports upwards):
    __main__      the ``e2e/cluster`` command line
    controlplane  up / down / status of the whole cluster
    kubelet       the test kubelet process: node, binder, pod workers, log server
    containers    pod spec -> process: image mapping, env resolution, exit status
    build, pki    Go builds; certificates and kubeconfigs (openssl)
    api, procs    a stdlib HTTPS client for the API server; spawning and killing our processes
    settings      pinned versions and on-disk locations
"""
