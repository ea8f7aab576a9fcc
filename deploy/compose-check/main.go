// compose-check loads a Compose file with compose-go, the loader of `docker compose`,
// and prints the resolved project as JSON, or the loader's error and exit status 1.
//
// It validates what `docker compose config` validates (the Compose specification's
// schema, interpolation, service references, dependency cycles, profiles) on machines
// that have no Compose plugin.
//
// Usage: compose-check [-env-file FILE] [-profile NAME]... FILE...
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var profiles, envFiles listFlag
	flag.Var(&profiles, "profile", "enable a profile (repeatable)")
	flag.Var(&envFiles, "env-file", "environment file for interpolation (repeatable)")
	name := flag.String("project-name", "fairway", "project name")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: compose-check [-env-file FILE] [-profile NAME]... FILE...")
		os.Exit(2)
	}
	options, err := cli.NewProjectOptions(
		flag.Args(),
		cli.WithName(*name),
		cli.WithOsEnv,
		cli.WithEnvFiles(envFiles...),
		cli.WithDotEnv,
		cli.WithProfiles(profiles),
		cli.WithInterpolation(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		fail(err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fail(err)
	}
	fmt.Println(string(out))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "compose-check:", err)
	os.Exit(1)
}
