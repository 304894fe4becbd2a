// Command verdicts gives the verdicts that tools users rely on reach about flowplane objects,
// computed by those tools' own code:
//
//	verdicts kstatus < objects.json        kstatus (sigs.k8s.io/cli-utils), what Flux waits on
//	verdicts argocd SCRIPT [--open-libs] < object.json
//	                                        an Argo CD health script run by gopher-lua set up
//	                                        as Argo CD sets it up (util/lua): without the
//	                                        standard libraries unless the resource customization
//	                                        sets useOpenLibs, with the package, base and table
//	                                        libraries always, a one-second deadline, and `obj`
//
// objects.json is a JSON array; each verdict is printed as "STATUS<TAB>MESSAGE" on one line.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "verdicts:", err)
		os.Exit(1)
	}
}

func run(args []string, in io.Reader, out io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: verdicts kstatus | verdicts argocd SCRIPT [--open-libs]")
	}
	input, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	switch args[0] {
	case "kstatus":
		// Integral numbers as int64, as the API machinery (and so kstatus) expects them.
		var objects []map[string]any
		if err := utiljson.Unmarshal(input, &objects); err != nil {
			return err
		}
		for _, object := range objects {
			result, err := status.Compute(&unstructured.Unstructured{Object: object})
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "%s\t%s\n", result.Status, oneLine(result.Message))
		}
		return nil
	case "argocd":
		if len(args) < 2 {
			return fmt.Errorf("argocd needs the health script")
		}
		script, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		var object map[string]any
		if err := utiljson.Unmarshal(input, &object); err != nil {
			return err
		}
		openLibs := len(args) > 2 && args[2] == "--open-libs"
		health, message, err := argocdHealth(string(script), object, openLibs)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%s\t%s\n", health, oneLine(message))
		return nil
	}
	return fmt.Errorf("unknown verdict %q", args[0])
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", `\n`) }

func argocdHealth(script string, object map[string]any, openLibs bool) (string, string, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return "", "", err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, object))
	if err := l.DoString(script); err != nil {
		return "", "", err
	}
	result, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("the script returned no table")
	}
	return lua.LVAsString(result.RawGetString("status")), lua.LVAsString(result.RawGetString("message")), nil
}

// toLua converts decoded JSON the way Argo CD's decodeValue does: objects and arrays become
// tables (arrays 1-based), numbers LNumber, nil LNil.
func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []any:
		table := l.NewTable()
		for _, item := range v {
			table.Append(toLua(l, item))
		}
		return table
	case map[string]any:
		table := l.NewTable()
		for key, item := range v {
			table.RawSetString(key, toLua(l, item))
		}
		return table
	}
	return lua.LString(fmt.Sprint(value))
}
