package main

import (
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// modelNameField is ModelInferRequest.model_name (protos/twinbench/api/inference.proto).
const modelNameField protowire.Number = 1

// modelName reads model_name from a serialized ModelInferRequest as protobuf's parsers do: the
// last occurrence wins, an occurrence with another wire type is an unknown field, and the name
// must be UTF-8 (a proto3 string). It walks the top-level fields only, skipping the tensors by
// their length, so it costs a few steps however large the request is. ok is false when the
// bytes are not a well-formed message at the top level or a name is not UTF-8: such a request is
// relayed, and the gateway refuses it in its own words. A well-formed request with no name gives
// "", true.
func modelName(b []byte) (name string, ok bool) {
	var found []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", false
		}
		b = b[n:]
		if num == modelNameField && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 || !utf8.Valid(v) {
				return "", false
			}
			found, b = v, b[n:]
			continue
		}
		n = skipValue(num, typ, b, maxGroupDepth)
		if n < 0 {
			return "", false
		}
		b = b[n:]
	}
	return string(found), true
}

// maxGroupDepth is how deep groups may nest in a field the front skips: as deep as Python's
// protobuf (upb) takes messages.
const maxGroupDepth = 100

// skipValue is the length of a field's value, or < 0. It is protowire.ConsumeFieldValue but for
// two leniencies that Python's protobuf (upb) has, so that the front reads every request Python
// reads: a ten-byte varint whose last byte carries bits beyond 64 is read (the extra bits
// dropped), and field number 0 is taken inside a group.
func skipValue(num protowire.Number, typ protowire.Type, b []byte, depth int) int {
	switch typ {
	case protowire.VarintType:
		_, n := protowire.ConsumeVarint(b)
		if n < 0 && len(b) >= 10 && b[9] < 0x80 && protowire.ParseError(n) == protowire.ParseError(errOverflow) {
			return 10
		}
		return n
	case protowire.StartGroupType:
		if depth <= 0 {
			return -1
		}
		total := 0
		for {
			// Inside a group, upb takes field number 0 as any other.
			tag, n := protowire.ConsumeVarint(b[total:])
			if n < 0 {
				return n
			}
			num2, typ2 := protowire.DecodeTag(tag)
			if num2 < 0 {
				return -1
			}
			total += n
			if typ2 == protowire.EndGroupType {
				if num2 != num {
					return -1
				}
				return total
			}
			n = skipValue(num2, typ2, b[total:], depth-1)
			if n < 0 {
				return n
			}
			total += n
		}
	}
	return protowire.ConsumeFieldValue(num, typ, b)
}

// errOverflow is protowire's error code for a varint that overflows 64 bits.
var errOverflow = func() int {
	_, n := protowire.ConsumeVarint([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02})
	return n
}()

// frameworkOf is the framework part of <model>-<framework>-<format>, or "": the naming rule of
// the Python side's parse_model_name (twinbench's serving repository), the one place it is
// written in Go. The model part may hold '-' itself; no part may be empty.
func frameworkOf(name string) string {
	rest, format, ok := cut(name)
	if !ok || format == "" {
		return ""
	}
	model, framework, ok := cut(rest)
	if !ok || model == "" {
		return ""
	}
	return framework
}

// cut splits at the last '-', as Python's str.rpartition does.
func cut(s string) (before, after string, found bool) {
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return "", s, false
	}
	return s[:i], s[i+1:], true
}
