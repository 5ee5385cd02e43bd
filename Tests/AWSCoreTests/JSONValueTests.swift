import AWSCore
import FoundationEssentials
import Testing

@Suite struct JSONValueTests {
    @Test func parsesEveryKindOfValue() throws {
        let text = #" { "s": "a", "n": -12.5e1, "t": true, "f": false, "z": null, "a": [1, [], {}], "o": {"k": "v"} } "#
        let value = try JSONValue.parse(text)
        #expect(
            value
                == .object([
                    "s": .string("a"), "n": .number(-125), "t": .bool(true), "f": .bool(false), "z": .null,
                    "a": .array([.number(1), .array([]), .object([:])]), "o": .object(["k": .string("v")]),
                ]))
    }

    @Test func agreesWithFoundationsDecoderOnValidDocuments() throws {
        // An independent parser as the reference: both must read the same values.
        let documents = [
            #"{"Messages":[{"MessageId":"m-1","ReceiptHandle":"AQEB+/=x","Body":"in/a b.txt","Attributes":{"ApproximateReceiveCount":"3"}}]}"#,
            #"[0, -0, 1.5, 2e10, 3E-3, 123456789012, -9007199254740991]"#,
            #"{"e":"\"\\\/\b\f\n\r\t\u0041\u00e9\u4e2d\ud83d\ude00","nested":[[[["deep"]]]]}"#,
            #""just a string""#, "true", "null", "  42  ",
        ]
        for document in documents {
            let reference = try JSONDecoder().decode(JSONValue.self, from: Data(document.utf8))
            #expect(try JSONValue.parse(document) == reference, "\(document)")
        }
    }

    @Test func decodesEscapes() throws {
        #expect(try JSONValue.parse(#""a\"b\\c\/d\ne\tf""#) == .string("a\"b\\c/d\ne\tf"))
        #expect(try JSONValue.parse(#""\u00e9\u4E2D""#) == .string("é中"))
        #expect(try JSONValue.parse(#""\ud83d\ude00""#) == .string("😀"))
        // A lone surrogate is not a scalar: it becomes the replacement character, and what follows is kept.
        #expect(try JSONValue.parse(#""x\ud83dy""#) == .string("x\u{FFFD}y"))
        #expect(try JSONValue.parse(#""\ude00\u0041""#) == .string("\u{FFFD}A"))
        #expect(try JSONValue.parse("\"é 中 😀\"") == .string("é 中 😀"))
    }

    @Test(arguments: [
        "", " ", "{", "}", "[1,]", "[1 2]", #"{"a" 1}"#, #"{"a":1,}"#, #"{a:1}"#, "'s'", #""unterminated"#,
        "\"tab\tinside\"", #""\x""#, #""\u12""#, #""\u12G4""#, "01", "1.", ".5", "-", "+1", "1e", "1e+", "--1",
        "tru", "nul", "true false", #"{"a":1} x"#, "[1]]", "NaN", "Infinity",
    ])
    func refusesWhatIsNotJSON(_ text: String) {
        #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse(text) }
    }

    @Test func refusesStringsThatAreNotUTF8() {
        let bytes: [UInt8] = Array(#"{"k":""#.utf8) + [0xC3, 0x28] + Array(#""}"#.utf8)
        #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse(bytes) }
        #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse([0x22, 0xFF, 0x22]) }
    }

    @Test func errorsSayWhere() {
        do {
            _ = try JSONValue.parse(#"{"a": [1, 2,, 3]}"#)
            Issue.record("parsed")
        } catch {
            #expect(error.offset == 12)
            #expect("\(error)".contains("byte 12"))
        }
    }

    @Test func nestingIsLimitedInsteadOfExhaustingTheStack() throws {
        let limit = JSONValue.maxDepth
        let deepest = String(repeating: "[", count: limit) + String(repeating: "]", count: limit)
        #expect(try JSONValue.parse(deepest).arrayValue != nil)
        let tooDeep = String(repeating: "[", count: limit + 1) + String(repeating: "]", count: limit + 1)
        #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse(tooDeep) }
        // A message body of 256 KiB of brackets: refused, no crash.
        #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse(String(repeating: "[{\"a\":", count: 40_000)) }
    }

    @Test func writesCompactSortedText() {
        let value = JSONValue.object([
            "b": .array([.number(3), .number(-0.25), .number(1e21), .bool(false), .null]),
            "a": .string("q\"uote \\ slash/ nl\n tab\t bell\u{07} é"),
            "c": .number(.infinity),
        ])
        #expect(
            value.serialized
                == #"{"a":"q\"uote \\ slash/ nl\n tab\t bell\u0007 é","b":[3,-0.25,1e+21,false,null],"c":null}"#)
    }

    @Test func whatIsWrittenReadsBackTheSame() throws {
        let values: [JSONValue] = [
            .object(["key with \"quotes\"": .array([.string("\u{01}\u{1f}"), .number(12345678901), .number(0.1)])]),
            .string("😀 中 \\u0041"), .array([]), .object([:]), .number(-7), .bool(true), .null,
        ]
        for value in values {
            #expect(try JSONValue.parse(value.serialized) == value)
            // And Foundation's decoder reads our text as the same value.
            #expect(try JSONDecoder().decode(JSONValue.self, from: Data(value.serialized.utf8)) == value)
        }
    }
}
