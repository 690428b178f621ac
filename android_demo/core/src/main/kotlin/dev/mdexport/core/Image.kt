package dev.mdexport.core

/** An image as packed ARGB_8888 pixels, row by row (what `Bitmap.createBitmap(int[], w, h, ARGB_8888)` takes). */
class ArgbImage(val width: Int, val height: Int, val pixels: IntArray)

object Images {
    /**
     * [1, 3, H, W] NCHW float in [-1, 1] -> opaque ARGB pixels, the way diffusers makes a PIL image:
     * `round(clamp(x / 2 + 0.5, 0, 1) * 255)`. NaN becomes 0.
     */
    fun toArgb(image: FloatTensor): ArgbImage {
        val s = image.shape
        require(s.size == 4 && s[0] == 1 && s[1] == 3) { "expected an image of shape [1, 3, H, W], got ${image.shapeString()}" }
        val h = s[2]
        val w = s[3]
        val plane = h * w
        val d = image.data
        val px = IntArray(plane)
        for (i in 0 until plane) {
            val r = channel(d[i])
            val g = channel(d[plane + i])
            val b = channel(d[2 * plane + i])
            px[i] = (0xFF shl 24) or (r shl 16) or (g shl 8) or b
        }
        return ArgbImage(w, h, px)
    }

    private fun channel(x: Float): Int {
        if (x.isNaN()) return 0
        val v = (x / 2f + 0.5f).coerceIn(0f, 1f) * 255f
        return Math.rint(v.toDouble()).toInt()
    }
}
