/// A small XML reader for AWS replies (S3, EC2, query-protocol errors). FoundationXML would tie the release binary to
/// a libstdc++ that Amazon Linux 2023 lacks, and AWS's XML is simple: elements, text, entities, no DTDs.
public struct XMLElement: Sendable, CustomStringConvertible {
    public var name: String
    public var attributes: [String: String]
    public var children: [XMLElement]
    public var text: String

    /// The first child with this local name (namespace prefixes ignored).
    public func child(_ name: String) -> XMLElement? { children.first { $0.localName == name } }
    public func all(_ name: String) -> [XMLElement] { children.filter { $0.localName == name } }
    /// The text of the first child with this name.
    public subscript(_ name: String) -> String? { child(name)?.text }
    /// Depth-first search for the first element with this name, this element included.
    public func find(_ name: String) -> XMLElement? {
        if localName == name { return self }
        for c in children { if let hit = c.find(name) { return hit } }
        return nil
    }
    public var localName: String { name.split(separator: ":").last.map(String.init) ?? name }
    public var description: String { "<\(name)> (\(children.count) children)" }
}

public struct XMLParseError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { "XML parse error: \(message)" }
}

public enum XML {
    /// Parses a document and returns its root element.
    public static func parse(_ bytes: [UInt8]) throws(XMLParseError) -> XMLElement {
        var parser = Parser(bytes: bytes)
        return try parser.document()
    }

    public static func parse(_ text: String) throws(XMLParseError) -> XMLElement { try parse(Array(text.utf8)) }

    /// Escapes text for an element body or attribute.
    public static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for ch in text {
            switch ch {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            case "\r": out += "&#13;"
            default: out.append(ch)
            }
        }
        return out
    }

    struct Parser {
        let bytes: [UInt8]
        var i = 0

        init(bytes: [UInt8]) { self.bytes = bytes }

        mutating func document() throws(XMLParseError) -> XMLElement {
            while true {
                skipSpace()
                guard i < bytes.count else { throw XMLParseError(message: "no root element") }
                if starts("<?") {
                    try skip(past: "?>")
                } else if starts("<!--") {
                    try skip(past: "-->")
                } else if starts("<!") {
                    try skip(past: ">")
                } else if bytes[i] == UInt8(ascii: "<") {
                    return try element()
                } else {
                    throw XMLParseError(message: "text before the root element")
                }
            }
        }

        mutating func element() throws(XMLParseError) -> XMLElement {
            i += 1  // <
            let name = readName()
            guard !name.isEmpty else { throw XMLParseError(message: "empty element name at \(i)") }
            var attributes: [String: String] = [:]
            while true {
                skipSpace()
                guard i < bytes.count else { throw XMLParseError(message: "unterminated tag <\(name)>") }
                if starts("/>") {
                    i += 2
                    return XMLElement(name: name, attributes: attributes, children: [], text: "")
                }
                if bytes[i] == UInt8(ascii: ">") {
                    i += 1
                    break
                }
                let attr = readName()
                skipSpace()
                guard !attr.isEmpty, i < bytes.count, bytes[i] == UInt8(ascii: "=") else {
                    throw XMLParseError(message: "bad attribute in <\(name)>")
                }
                i += 1
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") || bytes[i] == UInt8(ascii: "'") else {
                    throw XMLParseError(message: "unquoted attribute in <\(name)>")
                }
                let quote = bytes[i]
                i += 1
                let start = i
                while i < bytes.count && bytes[i] != quote { i += 1 }
                guard i < bytes.count else { throw XMLParseError(message: "unterminated attribute") }
                attributes[attr] = try decodeEntities(bytes[start..<i])
                i += 1
            }
            var children: [XMLElement] = []
            var text: [UInt8] = []
            while true {
                guard i < bytes.count else { throw XMLParseError(message: "unterminated element <\(name)>") }
                if starts("</") {
                    i += 2
                    let closing = readName()
                    guard closing == name else { throw XMLParseError(message: "</\(closing)> closes <\(name)>") }
                    skipSpace()
                    guard i < bytes.count, bytes[i] == UInt8(ascii: ">") else {
                        throw XMLParseError(message: "bad end tag")
                    }
                    i += 1
                    return XMLElement(
                        name: name, attributes: attributes, children: children,
                        text: try decodeEntities(text[...]))
                }
                if starts("<![CDATA[") {
                    i += 9
                    let start = i
                    while i < bytes.count && !starts("]]>") { i += 1 }
                    guard i < bytes.count else { throw XMLParseError(message: "unterminated CDATA") }
                    // Escape so decodeEntities leaves the CDATA text as it was.
                    for b in bytes[start..<i] {
                        if b == UInt8(ascii: "&") {
                            text.append(contentsOf: Array("&amp;".utf8))
                        } else {
                            text.append(b)
                        }
                    }
                    i += 3
                } else if starts("<!--") {
                    try skip(past: "-->")
                } else if starts("<?") {
                    try skip(past: "?>")
                } else if bytes[i] == UInt8(ascii: "<") {
                    children.append(try element())
                } else {
                    text.append(bytes[i])
                    i += 1
                }
            }
        }

        func starts(_ s: StaticString) -> Bool {
            let n = s.utf8CodeUnitCount
            guard i + n <= bytes.count else { return false }
            let p = s.utf8Start
            for k in 0..<n where bytes[i + k] != p[k] { return false }
            return true
        }

        mutating func skip(past s: StaticString) throws(XMLParseError) {
            while i < bytes.count && !starts(s) { i += 1 }
            guard i < bytes.count else { throw XMLParseError(message: "unterminated markup") }
            i += s.utf8CodeUnitCount
        }

        mutating func skipSpace() {
            while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x09 || bytes[i] == 0x0a || bytes[i] == 0x0d {
                i += 1
            }
        }

        mutating func readName() -> String {
            let start = i
            while i < bytes.count {
                let b = bytes[i]
                if b == 0x20 || b == 0x09 || b == 0x0a || b == 0x0d || b == UInt8(ascii: ">") || b == UInt8(ascii: "/")
                    || b == UInt8(ascii: "=")
                {
                    break
                }
                i += 1
            }
            return String(decoding: bytes[start..<i], as: UTF8.self)
        }

        func decodeEntities(_ slice: ArraySlice<UInt8>) throws(XMLParseError) -> String {
            guard slice.contains(UInt8(ascii: "&")) else { return String(decoding: slice, as: UTF8.self) }
            var out: [UInt8] = []
            out.reserveCapacity(slice.count)
            var k = slice.startIndex
            while k < slice.endIndex {
                let b = slice[k]
                guard b == UInt8(ascii: "&") else {
                    out.append(b)
                    k += 1
                    continue
                }
                guard let semi = slice[k...].firstIndex(of: UInt8(ascii: ";")), semi - k <= 12 else {
                    throw XMLParseError(message: "bad entity")
                }
                let entity = String(decoding: slice[(k + 1)..<semi], as: UTF8.self)
                switch entity {
                case "amp": out.append(UInt8(ascii: "&"))
                case "lt": out.append(UInt8(ascii: "<"))
                case "gt": out.append(UInt8(ascii: ">"))
                case "quot": out.append(UInt8(ascii: "\""))
                case "apos": out.append(UInt8(ascii: "'"))
                default:
                    var scalarValue: UInt32?
                    if entity.hasPrefix("#x") || entity.hasPrefix("#X") {
                        scalarValue = UInt32(entity.dropFirst(2), radix: 16)
                    } else if entity.hasPrefix("#") {
                        scalarValue = UInt32(entity.dropFirst())
                    }
                    guard let v = scalarValue, let scalar = Unicode.Scalar(v) else {
                        throw XMLParseError(message: "unknown entity &\(entity);")
                    }
                    out.append(contentsOf: Array(String(Character(scalar)).utf8))
                }
                k = semi + 1
            }
            return String(decoding: out, as: UTF8.self)
        }
    }
}
