/// SigV4's URI encoding: every byte except the unreserved set `A-Z a-z 0-9 - . _ ~` becomes `%XX` (uppercase),
/// and `/` is kept only where the caller says so (paths). This is RFC 3986 as AWS applies it, which differs
/// from form encoding: a space is `%20`, never `+`.
public enum URIEncoding {
    @inline(__always)
    static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
            UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    /// Encodes `string` byte by byte. - Parameter keepSlash: leave `/` as is (for paths and S3 keys in paths).
    public static func encode(_ string: String, keepSlash: Bool = false) -> String {
        let hex: [UInt8] = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(string.utf8.count)
        for byte in string.utf8 {
            if isUnreserved(byte) || (keepSlash && byte == UInt8(ascii: "/")) {
                out.append(byte)
            } else {
                out.append(UInt8(ascii: "%"))
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0x0f)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes `%XX` escapes. Invalid escapes are kept literally; `+` stays `+` unless `plusIsSpace`
    /// (form encoding, as in S3 event notifications).
    public static func decode(_ string: String, plusIsSpace: Bool = false) -> String {
        String(decoding: decodeBytes(string, plusIsSpace: plusIsSpace), as: UTF8.self)
    }

    /// The decoded bytes, which need not be UTF-8 (`%FF` decodes to a lone 0xFF).
    public static func decodeBytes(_ string: String, plusIsSpace: Bool = false) -> [UInt8] {
        let bytes = Array(string.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "%"), index + 2 < bytes.count,
                let high = hexValue(bytes[index + 1]), let low = hexValue(bytes[index + 2])
            {
                out.append(high << 4 | low)
                index += 3
            } else if plusIsSpace && byte == UInt8(ascii: "+") {
                out.append(UInt8(ascii: " "))
                index += 1
            } else {
                out.append(byte)
                index += 1
            }
        }
        return out
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    /// Splits a raw query string (`a=1&b=%20`) into decoded pairs, in order. A name without `=` has an empty value.
    public static func parseQuery(_ query: String) -> [(String, String)] {
        guard !query.isEmpty else { return [] }
        return query.split(separator: "&", omittingEmptySubsequences: true).map { part in
            if let eq = part.firstIndex(of: "=") {
                return (decode(String(part[..<eq])), decode(String(part[part.index(after: eq)...])))
            }
            return (decode(String(part)), "")
        }
    }

    /// Joins decoded pairs into a wire query string, in the given order.
    public static func formatQuery(_ items: [(String, String)]) -> String {
        items.map { "\(encode($0.0))=\(encode($0.1))" }.joined(separator: "&")
    }
}
