module github.com/eventbus-sidecar/eventbus-sidecar/wal/compare

go 1.26.8

require (
	github.com/eventbus-sidecar/eventbus-sidecar v0.0.0
	github.com/tidwall/wal v1.2.1
	go.etcd.io/bbolt v1.5.0
)

require (
	github.com/tidwall/gjson v1.10.2 // indirect
	github.com/tidwall/match v1.1.1 // indirect
	github.com/tidwall/pretty v1.2.0 // indirect
	github.com/tidwall/tinylru v1.1.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
)

replace github.com/eventbus-sidecar/eventbus-sidecar => ../..
