// libcni-driver: drive CNI plugins through the reference libcni (github.com/containernetworking/cni/libcni),
// exactly as container runtimes (containerd, CRI-O) do: load a conflist by network name from a conf dir,
// then AddNetworkList / CheckNetworkList / DelNetworkList / GetVersionInfo.
//
//	libcni-driver <add|check|del|version> --confdir DIR --name NET --netns PATH --id CONTAINERID
//	              --ifname IF --bindir DIR[:DIR] [--cachedir DIR] [--capargs JSON] [--args K=V;K=V]
//
// Exit 0 on success. On failure the error text goes to stderr and the exit status is 1; when the error
// (or anything it wraps) is a CNI *types.Error, its JSON {"code","msg","details"} is printed to stdout.
//
// Built offline in GOPATH mode against Debian's golang-github-appc-cni-dev: see tests/go/build.sh.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func usage() {
	fmt.Fprintf(os.Stderr, "usage: libcni-driver <add|check|del|version> --confdir DIR --name NET "+
		"--netns PATH --id CONTAINERID --ifname IF --bindir DIR[:DIR] [--cachedir DIR] "+
		"[--capargs JSON] [--args K=V;K=V] [--timeout SECONDS]\n")
	os.Exit(2)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err.Error())
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		out, _ := json.Marshal(cniErr)
		fmt.Fprintln(os.Stdout, string(out))
	}
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd := os.Args[1]
	fs := flag.NewFlagSet("libcni-driver", flag.ExitOnError)
	confdir := fs.String("confdir", "/etc/cni/net.d", "directory holding the network configuration(s)")
	name := fs.String("name", "", "network name (the conflist's \"name\")")
	netns := fs.String("netns", "", "path of the container's network namespace")
	id := fs.String("id", "", "container ID")
	ifname := fs.String("ifname", "eth0", "interface name inside the container")
	bindir := fs.String("bindir", "/opt/cni/bin", "plugin search path, ':'-separated")
	cachedir := fs.String("cachedir", "", "libcni cache dir (default /var/lib/cni)")
	capargs := fs.String("capargs", "", "capability args as a JSON object, e.g. {\"portMappings\":[...]}")
	args := fs.String("args", "", "CNI_ARGS as K=V;K=V")
	timeout := fs.Int("timeout", 60, "overall timeout in seconds")
	if err := fs.Parse(os.Args[2:]); err != nil {
		usage()
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "unexpected arguments: %v\n", fs.Args())
		usage()
	}
	if *name == "" {
		fmt.Fprintln(os.Stderr, "--name is required")
		usage()
	}

	list, err := libcni.LoadConfList(*confdir, *name)
	if err != nil {
		fail(fmt.Errorf("load conflist %q from %s: %w", *name, *confdir, err))
	}

	var paths []string
	for _, p := range filepath.SplitList(*bindir) {
		if p != "" {
			paths = append(paths, p)
		}
	}
	cni := libcni.NewCNIConfigWithCacheDir(paths, *cachedir, nil)

	rt := &libcni.RuntimeConf{
		ContainerID: *id,
		NetNS:       *netns,
		IfName:      *ifname,
	}
	if *args != "" {
		for _, kv := range strings.Split(*args, ";") {
			if kv == "" {
				continue
			}
			parts := strings.SplitN(kv, "=", 2)
			if len(parts) != 2 {
				fail(fmt.Errorf("invalid --args element %q (want K=V)", kv))
			}
			rt.Args = append(rt.Args, [2]string{parts[0], parts[1]})
		}
	}
	if *capargs != "" {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(*capargs), &m); err != nil {
			fail(fmt.Errorf("invalid --capargs JSON: %w", err))
		}
		rt.CapabilityArgs = m
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(*timeout)*time.Second)
	defer cancel()

	switch cmd {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		out, err := json.Marshal(res)
		if err != nil {
			fail(fmt.Errorf("encode result: %w", err))
		}
		fmt.Println(string(out))
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "version":
		// One entry per distinct plugin type in the list:
		// {"<type>": {"cniVersion": "<preferred>", "supportedVersions": [...]}}
		infos := map[string]interface{}{}
		for _, p := range list.Plugins {
			t := p.Network.Type
			if _, ok := infos[t]; ok {
				continue
			}
			info, err := cni.GetVersionInfo(ctx, t)
			if err != nil {
				fail(fmt.Errorf("plugin type=%q: VERSION: %w", t, err))
			}
			var buf bytes.Buffer
			if err := info.Encode(&buf); err != nil {
				fail(fmt.Errorf("plugin type=%q: encode version info: %w", t, err))
			}
			infos[t] = json.RawMessage(bytes.TrimSpace(buf.Bytes()))
		}
		out, _ := json.Marshal(infos)
		fmt.Println(string(out))
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n", cmd)
		usage()
	}
}
