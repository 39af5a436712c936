package main
import (
 _ "github.com/hibiken/asynq"
 _ "github.com/redis/go-redis/v9"
 _ "github.com/sethvargo/go-retry"
 _ "github.com/alicebob/miniredis/v2"
 _ "github.com/spf13/cobra"
 _ "github.com/prometheus/client_golang/prometheus"
 _ "github.com/schollz/progressbar/v3"
 _ "github.com/google/go-cmp/cmp"
 _ "golang.org/x/term"
 _ "golang.org/x/net/http2"
 _ "github.com/hibiken/asynqmon"
)
func main(){}
