package dev.mdexport.core

import java.text.Normalizer
import java.util.Locale

/**
 * CLIP's byte-level BPE tokenizer, matching Hugging Face `CLIPTokenizer` (transformers 5,
 * the `tokenizers`-backed implementation):
 *
 * 1. normalize: NFC, every run of Unicode whitespace -> one space, lowercase (per code point,
 *    without context rules, as the Rust `Lowercase` normalizer does);
 * 2. split with CLIP's pattern (special tokens, English contractions, letter runs, single
 *    digits, runs of other non-space characters); spaces are dropped;
 * 3. map each piece's UTF-8 bytes to GPT-2's printable byte alphabet and apply the BPE
 *    merges, with `</w>` on the last symbol of each piece;
 * 4. `[bos] + ids[:maxLength-2] + [eos]`, padded to [maxLength] with [padId].
 */
class ClipTokenizer(
    private val vocab: Map<String, Int>,
    merges: List<Pair<String, String>>,
    val bosId: Int = 49406,
    val eosId: Int = 49407,
    val padId: Int = 49407,
    val maxLength: Int = 77,
) {
    private val ranks: HashMap<String, Int> = HashMap<String, Int>(merges.size * 2).also { m ->
        merges.forEachIndexed { i, (a, b) -> m.putIfAbsent("$a $b", i) }
    }
    private val specials: Map<String, Int> = listOf(BOS_TEXT, EOS_TEXT).mapNotNull { s -> vocab[s]?.let { s to it } }.toMap()
    private val unkId: Int = vocab[EOS_TEXT] ?: eosId
    private val cache = HashMap<String, List<Int>>()

    init {
        require(maxLength >= 2) { "maxLength must be at least 2" }
    }

    /** Token ids for [text], with bos/eos, truncated and padded to [maxLength]. */
    fun encode(text: String): IntArray {
        val ids = tokenize(text)
        val out = IntArray(maxLength) { padId }
        out[0] = bosId
        val n = minOf(ids.size, maxLength - 2)
        for (i in 0 until n) out[i + 1] = ids[i]
        out[n + 1] = eosId
        return out
    }

    /** Token ids for [text] without bos/eos, truncation or padding. */
    fun tokenize(text: String): List<Int> {
        val out = ArrayList<Int>()
        for (m in PATTERN.findAll(normalize(text))) {
            val piece = m.value
            val special = specials[piece]
            if (special != null) { out += special; continue }
            out += cache.getOrPut(piece) { bpe(piece) }
        }
        return out
    }

    private fun bpe(piece: String): List<Int> {
        val bytes = piece.toByteArray(Charsets.UTF_8)
        val word = ArrayList<String>(bytes.size)
        for (b in bytes) word += BYTE_TO_CHAR[b.toInt() and 0xFF].toString()
        word[word.size - 1] = word[word.size - 1] + "</w>"
        while (word.size > 1) {
            var best = Int.MAX_VALUE
            var bestAt = -1
            for (i in 0 until word.size - 1) {
                val r = ranks["${word[i]} ${word[i + 1]}"] ?: continue
                if (r < best) { best = r; bestAt = i }
            }
            if (bestAt < 0) break
            val a = word[bestAt]
            val b = word[bestAt + 1]
            // Merge every non-overlapping occurrence of (a, b), left to right.
            val merged = ArrayList<String>(word.size)
            var i = 0
            while (i < word.size) {
                if (i < word.size - 1 && word[i] == a && word[i + 1] == b) {
                    merged += a + b
                    i += 2
                } else {
                    merged += word[i]
                    i += 1
                }
            }
            word.clear()
            word.addAll(merged)
        }
        return word.map { vocab[it] ?: unkId }
    }

    companion object {
        const val BOS_TEXT = "<|startoftext|>"
        const val EOS_TEXT = "<|endoftext|>"

        /** Unicode White_Space, what `\s` means to the Rust/Oniguruma normalizer. */
        private const val WS = "\\t\\n\\u000B\\f\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000"
        private val WHITESPACE_RUN = Regex("[$WS]+")
        private val PATTERN = Regex(
            "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^$WS\\p{L}\\p{N}]+"
        )

        /** GPT-2's reversible byte -> printable character table. */
        private val BYTE_TO_CHAR: CharArray = CharArray(256).also { table ->
            val printable = (('!'.code..'~'.code) + ('¡'.code..'¬'.code) + ('®'.code..'ÿ'.code)).toSet()
            var n = 0
            for (b in 0 until 256) {
                table[b] = if (b in printable) b.toChar() else (256 + n++).toChar()
            }
        }

        fun normalize(text: String): String {
            val nfc = Normalizer.normalize(text, Normalizer.Form.NFC)
            val spaced = WHITESPACE_RUN.replace(nfc, " ")
            val sb = StringBuilder(spaced.length)
            var i = 0
            while (i < spaced.length) {
                val cp = spaced.codePointAt(i)
                val n = Character.charCount(cp)
                // Lowercasing one code point at a time keeps a lone 'Σ' as 'σ' (no final-sigma rule), like Rust.
                sb.append(spaced.substring(i, i + n).lowercase(Locale.ROOT))
                i += n
            }
            return sb.toString()
        }

        /** Builds a tokenizer from the text of `vocab.json` and `merges.txt`. */
        fun fromText(
            vocabJson: String,
            mergesTxt: String,
            bosId: Int = 49406,
            eosId: Int = 49407,
            padId: Int = 49407,
            maxLength: Int = 77,
            vocabSource: String = "tokenizer/vocab.json",
            mergesSource: String = "tokenizer/merges.txt",
        ): ClipTokenizer {
            val parsed = try {
                Json.parseObject(vocabJson, vocabSource)
            } catch (e: JsonException) {
                throw BundleException(e.message ?: "$vocabSource: invalid JSON")
            }
            val vocab = HashMap<String, Int>(parsed.map.size * 2)
            for ((k, v) in parsed.map) {
                vocab[k] = (v as? Long)?.toInt() ?: throw BundleException("$vocabSource: value of \"$k\" is not an integer id")
            }
            val merges = ArrayList<Pair<String, String>>()
            mergesTxt.lineSequence().forEachIndexed { lineNo, raw ->
                val line = raw.trimEnd('\r')
                if (line.isEmpty() || (lineNo == 0 && line.startsWith("#version"))) return@forEachIndexed
                val sp = line.indexOf(' ')
                if (sp <= 0 || sp == line.length - 1 || line.indexOf(' ', sp + 1) >= 0) {
                    throw BundleException("$mergesSource: line ${lineNo + 1} is not two symbols separated by one space")
                }
                merges += line.substring(0, sp) to line.substring(sp + 1)
            }
            for (id in listOf(bosId, eosId, padId)) {
                if (id !in vocab.values) throw BundleException("$vocabSource: has no token with id $id (named in manifest.json)")
            }
            return ClipTokenizer(vocab, merges, bosId, eosId, padId, maxLength)
        }
    }
}
