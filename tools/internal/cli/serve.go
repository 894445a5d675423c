package cli

import (
	"errors"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

func newServeCommand() *cobra.Command {
	var o ServeOptions
	var tokenFile string
	cmd := &cobra.Command{
		Use:   "serve DIR...",
		Short: "Serve logs to peers over HTTP (segments by sendfile, tail, metrics), beside their writer or as it",
		Long: "Serve each store directory over HTTP as a log named by the directory's base name, until interrupted.\n" +
			"A store that another process writes is served read-only and refreshed as its files change; one that no\n" +
			"process writes is opened for writing (this process becomes its writer, and appends from other processes are\n" +
			"refused while it runs) unless --read-only is given: then nothing is written, a writer may start beside it,\n" +
			"and a store on a read-only mount can be served.",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError{errors.New("want one or more store directories")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if o.Token, err = resolveToken(cmd.ErrOrStderr(), o.Token, tokenFile); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return Serve(ctx, cmd.OutOrStdout(), args, o, nil)
		},
	}
	cmd.Flags().StringVar(&o.Listen, "listen", "127.0.0.1:7070", "address to listen on")
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file holding the bearer token clients must send (or set "+tokenEnv+"); without one, only loopback clients asking for a loopback host name are served")
	cmd.Flags().StringVar(&o.Token, "token", "", "bearer token clients must send (visible in ps: prefer --token-file or "+tokenEnv+")")
	cmd.Flags().BoolVar(&o.AllowRemote, "allow-remote", false, "serve non-loopback clients without a token")
	cmd.Flags().StringArrayVar(&o.AllowedHosts, "allow-host", nil, "without a token, also serve requests for this host name (besides localhost and loopback addresses); repeatable")
	cmd.Flags().BoolVar(&o.ReadOnly, "read-only", false, "never become a store's writer: serve it read-only, refreshed, even when no other process writes it")
	cmd.Flags().IntVar(&o.MaxExports, "max-exports", 64, "segment and tail bodies sent at once; more get 503 with Retry-After")
	cmd.Flags().DurationVar(&o.WriteTimeout, "write-timeout", 30*time.Second, "a client must take each MiB of a body within this, or it is cut off and its export slot freed")
	sizeVar(cmd.Flags(), &o.RateLimit, "rate-limit", 0, "bytes per second per response (0: unlimited)")
	cmd.Flags().StringVar(&o.TLSCert, "tls-cert", "", "PEM certificate: serve HTTPS (with --tls-key)")
	cmd.Flags().StringVar(&o.TLSKey, "tls-key", "", "PEM private key for --tls-cert")
	cmd.Flags().DurationVar(&o.Refresh, "refresh", 250*time.Millisecond, "a log another process writes is looked at as its files change, and at least this often")
	bound(cmd, "1", "", "max-exports")
	bound(cmd, "1ms", "", "write-timeout", "refresh")
	bound(cmd, "0", "", "rate-limit")
	return cmd
}
