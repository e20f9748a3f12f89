// Command etcd is etcd's own server, built from its Go module so envtest can
// start a real etcd on machines that can fetch nothing but Go modules.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
