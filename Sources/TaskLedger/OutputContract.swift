/// Where the daemon writes a task's output, as the operators' tools must predict it (`enqueue --skip-done`): the one
/// rule, spelled once, that the writer and the readers share.
public enum OutputContract {
    /// `outputPrefix` + the input key's folder (relative to `inputPrefix`) + the output's file name, so outputs of
    /// inputs with the same name in different folders never collide.
    public static func outputKey(inputKey: String, inputPrefix: String, outputPrefix: String, outputName: String)
        -> String
    {
        var relative = inputKey
        if !inputPrefix.isEmpty, relative.hasPrefix(inputPrefix) { relative.removeFirst(inputPrefix.count) }
        let folder = relative.lastIndex(of: "/").map { String(relative[...$0]) } ?? ""
        return outputPrefix + folder + outputName
    }

    /// The input key's file name (its last path component, as the command sees it before the daemon makes it a safe
    /// local name).
    public static func fileName(of key: String) -> String {
        key.split(separator: "/", omittingEmptySubsequences: false).last.map(String.init) ?? key
    }

    /// Where the daemon notes the receives of a message it gave back unrun (`ReleaseNotes`), one empty object
    /// `<message id>/<receive count>` each: those receives are not counted against `maxAttempts`.
    public static func releaseNotesPrefix(outputPrefix: String) -> String { outputPrefix + "_parallelizer/releases/" }
}
