import FoundationEssentials

/// UTC calendar fields from Unix seconds and back, without a calendar library or the C locale.
/// (Howard Hinnant's days-from-civil algorithm.)
public struct CivilTime: Sendable, Equatable {
    public var year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int

    public init(year: Int, month: Int, day: Int, hour: Int = 0, minute: Int = 0, second: Int = 0) {
        (self.year, self.month, self.day, self.hour, self.minute, self.second) = (
            year, month, day, hour, minute, second
        )
    }

    /// The whole second `date` falls in.
    public init(date: Date) {
        self.init(epochSeconds: Int64(date.timeIntervalSince1970.rounded(.down)))
    }

    public init(epochSeconds: Int64) {
        let days = Int(epochSeconds >= 0 ? epochSeconds / 86400 : (epochSeconds - 86399) / 86400)
        let secs = Int(epochSeconds - Int64(days) * 86400)
        let z = days + 719468
        let era = (z >= 0 ? z : z - 146096) / 146097
        let doe = z - era * 146097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        day = doy - (153 * mp + 2) / 5 + 1
        month = mp < 10 ? mp + 3 : mp - 9
        year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        hour = secs / 3600
        minute = secs % 3600 / 60
        second = secs % 60
    }

    public var epochSeconds: Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = month > 2 ? month - 3 : month + 9
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146097 + doe - 719468
        return Int64(days) * 86400 + Int64(hour * 3600 + minute * 60 + second)
    }

    var yyyymmdd: String { pad(year, 4) + pad(month, 2) + pad(day, 2) }
    var hhmmss: String { pad(hour, 2) + pad(minute, 2) + pad(second, 2) }

    /// `2015-08-30T12:36:00Z`.
    public var iso8601: String {
        "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(hour, 2)):\(pad(minute, 2)):\(pad(second, 2))Z"
    }

    /// Parses `2015-08-30T12:36:00Z`, with optional fractional seconds and a `Z` or `+hh:mm` offset.
    public static func parseISO8601(_ text: String) -> Int64? {
        let b = Array(text.utf8)
        func num(_ start: Int, _ len: Int) -> Int? {
            guard start + len <= b.count else { return nil }
            var v = 0
            for i in start..<(start + len) {
                guard b[i] >= 48, b[i] <= 57 else { return nil }
                v = v * 10 + Int(b[i] - 48)
            }
            return v
        }
        guard b.count >= 19, let y = num(0, 4), let mo = num(5, 2), let d = num(8, 2), let h = num(11, 2),
            let mi = num(14, 2), let s = num(17, 2), (1...12).contains(mo), (1...31).contains(d)
        else { return nil }
        var index = 19
        if index < b.count, b[index] == UInt8(ascii: ".") {
            index += 1
            while index < b.count, b[index] >= 48, b[index] <= 57 { index += 1 }
        }
        var offset = 0
        if index < b.count, b[index] == UInt8(ascii: "+") || b[index] == UInt8(ascii: "-") {
            guard let oh = num(index + 1, 2), let om = num(index + 4, 2) else { return nil }
            offset = (oh * 3600 + om * 60) * (b[index] == UInt8(ascii: "-") ? -1 : 1)
        }
        return CivilTime(year: y, month: mo, day: d, hour: h, minute: mi, second: s).epochSeconds - Int64(offset)
    }

    /// Parses an HTTP date (`Sun, 30 Aug 2015 12:36:00 GMT`, RFC 7231 IMF-fixdate).
    public static func parseHTTPDate(_ text: String) -> Int64? {
        let parts = text.split(separator: " ")
        guard parts.count == 6 else { return nil }
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        guard let d = Int(parts[1]), let mo = months.firstIndex(of: String(parts[2])), let y = Int(parts[3]) else {
            return nil
        }
        let hms = parts[4].split(separator: ":").compactMap { Int($0) }
        guard hms.count == 3 else { return nil }
        return CivilTime(year: y, month: mo + 1, day: d, hour: hms[0], minute: hms[1], second: hms[2]).epochSeconds
    }

    /// `Sun, 30 Aug 2015 12:36:00 GMT`.
    public var httpDate: String {
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        let days = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]
        let dayNumber = Int((epochSeconds >= 0 ? epochSeconds : epochSeconds - 86399) / 86400)
        let weekday = days[((dayNumber % 7) + 7) % 7]
        return
            "\(weekday), \(pad(day, 2)) \(months[month - 1]) \(pad(year, 4)) \(pad(hour, 2)):\(pad(minute, 2)):\(pad(second, 2)) GMT"
    }
}

@inline(__always)
private func pad(_ value: Int, _ width: Int) -> String {
    let s = String(value)
    return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
}
