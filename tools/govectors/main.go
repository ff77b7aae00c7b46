// Command govectors normalizes state values exactly as Dagu does, with Go's
// own encoding/json: the oracle behind castore's golden vectors
// (tests/data/go_*.jsonl; tools/go_vectors.py builds and runs it).
//
// It reads JSON lines on stdin and writes one JSON line per request:
//
//	{"mode":"json","b64":"<base64 of the raw input>"}
//	    Dagu's NormalizeStateValue: the 1 MiB raw pre-check, json.Decoder with
//	    UseNumber, exactly one value (a second Decode must be io.EOF),
//	    json.Marshal (HTML escaping on), the 1 MiB post-check.
//	{"mode":"float","bits":"<16 hex digits: the float64's bits>"}
//	    json.Marshal of one float64 (a YAML float in a step, as Dagu marshals it).
//
// Answer: {"ok":true,"b64":"<normalized>","sha256":"<hex>"} or {"ok":false,"err":"<Go's error>"}.
//
// encoding/json is the toolchain's, copied into ./gojson by tools/go_vectors.py,
// with Go 1.22's change (\b and \f written by name) applied to an older one.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	stdjson "encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"

	json "govectors/gojson"
)

const maxStateValueBytes = 1 << 20

var (
	errInvalid  = errors.New("dag state: invalid value")
	errTooLarge = errors.New("dag state: value too large")
)

// normalize mirrors Dagu's NormalizeStateValue.
func normalize(input []byte) ([]byte, error) {
	if len(input) > maxStateValueBytes {
		return nil, fmt.Errorf("%w: %d bytes exceeds %d", errTooLarge, len(input), maxStateValueBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(input))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%w: %v", errInvalid, err)
	}
	var extra any
	if err := dec.Decode(&extra); err != io.EOF {
		if err == nil {
			return nil, fmt.Errorf("%w: multiple JSON values", errInvalid)
		}
		return nil, fmt.Errorf("%w: %v", errInvalid, err)
	}
	out, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errInvalid, err)
	}
	if len(out) > maxStateValueBytes {
		return nil, fmt.Errorf("%w: %d bytes exceeds %d", errTooLarge, len(out), maxStateValueBytes)
	}
	return out, nil
}

type request struct {
	Mode string `json:"mode"`
	B64  string `json:"b64"`
	Bits string `json:"bits"`
}

type response struct {
	OK     bool   `json:"ok"`
	B64    string `json:"b64,omitempty"`
	Sha256 string `json:"sha256,omitempty"`
	Err    string `json:"err,omitempty"`
}

func handle(line []byte) response {
	var req request
	if err := stdjson.Unmarshal(line, &req); err != nil {
		return response{Err: "oracle: bad request: " + err.Error()}
	}
	var out []byte
	var err error
	switch req.Mode {
	case "json":
		var in []byte
		if in, err = base64.StdEncoding.DecodeString(req.B64); err != nil {
			return response{Err: "oracle: bad base64"}
		}
		out, err = normalize(in)
	case "float":
		var bits uint64
		if bits, err = strconv.ParseUint(req.Bits, 16, 64); err != nil {
			return response{Err: "oracle: bad bits"}
		}
		out, err = json.Marshal(math.Float64frombits(bits))
	default:
		return response{Err: "oracle: bad mode"}
	}
	if err != nil {
		return response{Err: err.Error()}
	}
	sum := sha256.Sum256(out)
	return response{OK: true, B64: base64.StdEncoding.EncodeToString(out), Sha256: hex.EncodeToString(sum[:])}
}

func main() {
	r := bufio.NewReaderSize(os.Stdin, 1<<20)
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	enc := stdjson.NewEncoder(w)
	for {
		line, err := r.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			if e := enc.Encode(handle(line)); e != nil {
				panic(e)
			}
		}
		if err != nil {
			break
		}
	}
}
