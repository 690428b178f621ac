package dev.mdexport.core

/**
 * A small, strict JSON parser (RFC 8259) with two leniencies that Python's `json` module
 * needs: the bare literals `NaN`, `Infinity` and `-Infinity` (Python writes them for
 * non-finite floats, e.g. in parity results).
 *
 * Values map to Kotlin as:
 *  - object -> `Map<String, Any?>` (a [LinkedHashMap], key order kept; a repeated key keeps the last value)
 *  - array  -> `List<Any?>`
 *  - string -> [String]
 *  - number -> [Long] when written without fraction or exponent and it fits, else [Double]
 *  - true/false -> [Boolean], null -> `null`
 */
object Json {
    fun parse(text: String): Any? {
        val p = Parser(text)
        p.skipWs()
        val v = p.value(0)
        p.skipWs()
        if (!p.atEnd()) p.fail("unexpected '${p.peekChar()}' after the JSON value")
        return v
    }

    /** Parses [text], which must be a JSON object, into a [JsonObject] whose errors name [source]. */
    fun parseObject(text: String, source: String): JsonObject {
        val v = try {
            parse(text)
        } catch (e: JsonException) {
            throw JsonException("$source: ${e.message}")
        }
        @Suppress("UNCHECKED_CAST")
        val m = v as? Map<String, Any?> ?: throw JsonException("$source: expected a JSON object at the top level")
        return JsonObject(m, source, "")
    }

    private const val MAX_DEPTH = 512

    private class Parser(private val s: String) {
        private var i = 0

        fun atEnd() = i >= s.length
        fun peekChar(): Char = s[i]

        fun fail(msg: String): Nothing {
            var line = 1
            var col = 1
            for (k in 0 until minOf(i, s.length)) {
                if (s[k] == '\n') { line++; col = 1 } else col++
            }
            throw JsonException("invalid JSON at line $line, column $col: $msg")
        }

        fun skipWs() {
            while (i < s.length) {
                val c = s[i]
                if (c == ' ' || c == '\t' || c == '\n' || c == '\r') i++ else break
            }
        }

        fun value(depth: Int): Any? {
            if (depth > MAX_DEPTH) fail("nesting deeper than $MAX_DEPTH")
            if (atEnd()) fail("unexpected end of input")
            return when (val c = s[i]) {
                '{' -> obj(depth)
                '[' -> arr(depth)
                '"' -> str()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                'N' -> literal("NaN", Double.NaN)
                'I' -> literal("Infinity", Double.POSITIVE_INFINITY)
                else -> if (c == '-' || c in '0'..'9') number() else fail("unexpected character '$c'")
            }
        }

        private fun literal(word: String, v: Any?): Any? {
            if (!s.startsWith(word, i)) fail("expected '$word'")
            i += word.length
            return v
        }

        private fun obj(depth: Int): Map<String, Any?> {
            i++ // {
            val m = LinkedHashMap<String, Any?>()
            skipWs()
            if (i < s.length && s[i] == '}') { i++; return m }
            while (true) {
                skipWs()
                if (atEnd() || s[i] != '"') fail("expected a string key")
                val k = str()
                skipWs()
                if (atEnd() || s[i] != ':') fail("expected ':' after key \"$k\"")
                i++
                skipWs()
                m[k] = value(depth + 1)
                skipWs()
                if (atEnd()) fail("unterminated object")
                when (s[i]) {
                    ',' -> i++
                    '}' -> { i++; return m }
                    else -> fail("expected ',' or '}' in object")
                }
            }
        }

        private fun arr(depth: Int): List<Any?> {
            i++ // [
            val a = ArrayList<Any?>()
            skipWs()
            if (i < s.length && s[i] == ']') { i++; return a }
            while (true) {
                skipWs()
                a.add(value(depth + 1))
                skipWs()
                if (atEnd()) fail("unterminated array")
                when (s[i]) {
                    ',' -> i++
                    ']' -> { i++; return a }
                    else -> fail("expected ',' or ']' in array")
                }
            }
        }

        private fun hex4(): Int {
            if (i + 4 > s.length) fail("truncated \\u escape")
            var v = 0
            for (k in 0 until 4) {
                val d = Character.digit(s[i + k], 16)
                if (d < 0) fail("bad hex digit in \\u escape")
                v = v * 16 + d
            }
            i += 4
            return v
        }

        private fun str(): String {
            i++ // opening quote
            val sb = StringBuilder()
            while (true) {
                if (atEnd()) fail("unterminated string")
                val c = s[i]
                when {
                    c == '"' -> { i++; return sb.toString() }
                    c == '\\' -> {
                        i++
                        if (atEnd()) fail("unterminated escape")
                        when (val e = s[i++]) {
                            '"' -> sb.append('"')
                            '\\' -> sb.append('\\')
                            '/' -> sb.append('/')
                            'b' -> sb.append('\b')
                            'f' -> sb.append('\u000C')
                            'n' -> sb.append('\n')
                            'r' -> sb.append('\r')
                            't' -> sb.append('\t')
                            // Surrogate pairs arrive as two escapes; appending the UTF-16 units in order rebuilds them.
                            'u' -> sb.append(hex4().toChar())
                            else -> { i--; fail("bad escape '\\$e'") }
                        }
                    }
                    c < ' ' -> fail("control character U+%04X in string".format(c.code))
                    else -> { sb.append(c); i++ }
                }
            }
        }

        private fun number(): Any {
            val start = i
            if (s[i] == '-') {
                i++
                if (s.startsWith("Infinity", i)) { i += 8; return Double.NEGATIVE_INFINITY }
            }
            if (atEnd()) fail("truncated number")
            if (s[i] == '0') {
                i++
            } else if (s[i] in '1'..'9') {
                while (i < s.length && s[i] in '0'..'9') i++
            } else fail("bad number")
            var integral = true
            if (i < s.length && s[i] == '.') {
                integral = false
                i++
                if (atEnd() || s[i] !in '0'..'9') fail("digits expected after '.'")
                while (i < s.length && s[i] in '0'..'9') i++
            }
            if (i < s.length && (s[i] == 'e' || s[i] == 'E')) {
                integral = false
                i++
                if (i < s.length && (s[i] == '+' || s[i] == '-')) i++
                if (atEnd() || s[i] !in '0'..'9') fail("digits expected in exponent")
                while (i < s.length && s[i] in '0'..'9') i++
            }
            val text = s.substring(start, i)
            if (integral) text.toLongOrNull()?.let { return it }
            return text.toDouble()
        }
    }
}

class JsonException(message: String) : Exception(message)

/**
 * Typed, path-aware access to a parsed JSON object: errors say which file and which key,
 * e.g. `manifest.json: pipeline.latent_height: expected an integer, got "64"`.
 */
class JsonObject(val map: Map<String, Any?>, val source: String, val path: String) {
    private fun where(key: String) = if (path.isEmpty()) key else "$path.$key"
    private fun err(key: String, msg: String): Nothing = throw JsonException("$source: ${where(key)}: $msg")

    private fun describe(v: Any?): String = when (v) {
        null -> "null"
        is String -> "\"${if (v.length > 40) v.take(40) + "..." else v}\""
        is Map<*, *> -> "an object"
        is List<*> -> "an array"
        else -> v.toString()
    }

    fun has(key: String) = map.containsKey(key) && map[key] != null
    val keys: Set<String> get() = map.keys
    fun raw(key: String): Any? = map[key]

    private fun need(key: String): Any = map[key] ?: err(key, if (map.containsKey(key)) "must not be null" else "missing")

    fun string(key: String): String = need(key) as? String ?: err(key, "expected a string, got ${describe(map[key])}")
    fun stringOr(key: String, default: String): String = if (has(key)) string(key) else default

    fun long(key: String): Long {
        return when (val v = need(key)) {
            is Long -> v
            is Double -> if (v == Math.floor(v) && !v.isInfinite() && Math.abs(v) < 9.0e15) v.toLong()
                else err(key, "expected an integer, got $v")
            else -> err(key, "expected an integer, got ${describe(v)}")
        }
    }

    fun int(key: String): Int {
        val v = long(key)
        if (v < Int.MIN_VALUE || v > Int.MAX_VALUE) err(key, "integer $v out of range")
        return v.toInt()
    }

    fun intOr(key: String, default: Int): Int = if (has(key)) int(key) else default

    fun double(key: String): Double = when (val v = need(key)) {
        is Long -> v.toDouble()
        is Double -> v
        else -> err(key, "expected a number, got ${describe(v)}")
    }

    fun doubleOr(key: String, default: Double): Double = if (has(key)) double(key) else default

    fun bool(key: String): Boolean = need(key) as? Boolean ?: err(key, "expected true or false, got ${describe(map[key])}")
    fun boolOr(key: String, default: Boolean): Boolean = if (has(key)) bool(key) else default

    fun obj(key: String): JsonObject {
        @Suppress("UNCHECKED_CAST")
        val m = need(key) as? Map<String, Any?> ?: err(key, "expected an object, got ${describe(map[key])}")
        return JsonObject(m, source, where(key))
    }

    fun objOrNull(key: String): JsonObject? = if (has(key)) obj(key) else null

    fun array(key: String): List<Any?> = need(key) as? List<Any?> ?: err(key, "expected an array, got ${describe(map[key])}")

    fun objects(key: String): List<JsonObject> = array(key).mapIndexed { idx, v ->
        @Suppress("UNCHECKED_CAST")
        val m = v as? Map<String, Any?> ?: err("$key[$idx]", "expected an object, got ${describe(v)}")
        JsonObject(m, source, where("$key[$idx]"))
    }

    fun intList(key: String): List<Int> = array(key).mapIndexed { idx, v ->
        when (v) {
            is Long -> if (v in Int.MIN_VALUE..Int.MAX_VALUE) v.toInt() else err("$key[$idx]", "integer $v out of range")
            else -> err("$key[$idx]", "expected an integer, got ${describe(v)}")
        }
    }

    fun doubleList(key: String): List<Double> = array(key).mapIndexed { idx, v ->
        when (v) {
            is Long -> v.toDouble()
            is Double -> v
            else -> err("$key[$idx]", "expected a number, got ${describe(v)}")
        }
    }
}
